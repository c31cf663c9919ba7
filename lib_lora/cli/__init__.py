"""The command line, one module per subcommand; `main` parses and dispatches."""
