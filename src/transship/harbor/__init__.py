"""Harbor knowledge: what Harbor means by its answers (`advice`, `quota`), its v2.0 API
(`api`: ping, projects, quotas, accessories), making missing projects (`projects`) and checking
accessories after a copy (`accessories`)."""
