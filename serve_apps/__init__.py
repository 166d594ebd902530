"""Ray Serve applications. Each module exposes ``build_app(args) -> Application``."""
