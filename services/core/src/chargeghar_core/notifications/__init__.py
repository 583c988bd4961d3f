"""Notifications to renters: an outbox written in the event's transaction, a worker that delivers it
through push (FCM), SMS (Sparrow, generic HTTP) and e-mail (SMTP) providers, templates and preferences."""
