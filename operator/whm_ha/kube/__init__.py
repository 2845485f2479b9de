"""Helpers to reach the Kubernetes API, shared by every component."""
