"""Question sets, prompts, and grading for sept: see data/README.md."""
