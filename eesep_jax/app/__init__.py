"""The application on top: the `eesep` command, file separation and the demo."""
