"""Harbor knowledge: what Harbor means by its answers (and, later, its project API)."""
