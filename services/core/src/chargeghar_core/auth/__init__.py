"""Staff and service accounts, password hashing and JWT access/refresh tokens."""
