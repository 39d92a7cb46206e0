"""imgpkg (Carvel) knowledge: ImagesLock, ImageLocations, bundles and their walk.

The core (engine, remote, layout, reference, manifest) knows nothing of imgpkg; planning and
the use cases call in here for what an imgpkg bundle means.
"""
