"""The legacy REST API (/api/ha/...) over the custom resources, with Kubernetes auth and audit."""
