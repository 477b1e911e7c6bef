"""Pipeline stages. Each module exposes NAME, VERSION and run(ctx, section, upstream) -> Artifact."""
