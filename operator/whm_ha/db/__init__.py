"""MySQL/MariaDB helpers: DSNs, migrations, and local servers for tests and the demo."""
