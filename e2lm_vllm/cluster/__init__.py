"""Ray clusters: start-up and the workers' environment (`ray_init`), token authentication (`auth`), secrets as actor arguments.

Imports only the standard library, Ray (lazily) and the top-level modules; the engine and the sweep both import it."""
