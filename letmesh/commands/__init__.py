"""The ``letmesh`` subcommands, one module per concern; ``letmesh.cli`` parses and dispatches."""
