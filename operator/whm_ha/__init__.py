"""whm-ha: a Kubernetes operator for highly available WHM nodes and MySQL/MariaDB replication."""

__version__ = "0.1.0"
