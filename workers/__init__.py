"""Ray: stateless inner-loop actors and the pool that owns them. Nothing else imports Ray."""
