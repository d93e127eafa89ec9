"""The book's app (nothing in the library imports it): runner, reports, figures, demo data, CLI."""
