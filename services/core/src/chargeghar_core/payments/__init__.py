"""Wallet ledger, top-ups through payment providers (sandbox, Razorpay), payment history."""
