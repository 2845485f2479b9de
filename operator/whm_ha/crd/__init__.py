"""The CRD contract: pydantic models of every spec and status, and the CRDs generated from them."""
