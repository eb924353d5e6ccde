"""Ray clusters: start-up and the workers' environment (`ray_init`), token authentication (`auth`), secrets as actor arguments (`worker_secrets`).

Imports only the standard library, Ray (lazily) and the top-level module settings; the engine, the sweep and proof import it."""
