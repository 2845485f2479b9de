"""Backups: where they are stored (`storage`), what describes one (`manifest`), how one is taken (`dump`) and
loaded into a server (`restore`)."""
