"""What every capability shares: small, dependency-light building blocks (``url_guard``: tenant-supplied URLs)."""
