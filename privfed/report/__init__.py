"""Tables (Markdown, CSV) and plots built from saved results: a pure function of results.json files."""
