"""Operations views over money and the fleet: transactions, revenue report, fleet sync log, metrics."""
