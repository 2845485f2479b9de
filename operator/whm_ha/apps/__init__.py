"""For WHM applications: a read/write-splitting connection pool that follows promotions, and the shared
session store and cache on ha_sessions and ha_cache."""
