"""Tools that derive the shared geometry constants in edge/geometry from real data."""
