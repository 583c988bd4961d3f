"""Operations API: the fleet dashboard and staff device commands (audited)."""
