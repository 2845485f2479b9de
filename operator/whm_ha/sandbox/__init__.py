"""A local API server that behaves like kube-apiserver for what this project relies on.

For tests, the demo and local development only; production uses a real cluster.
"""
