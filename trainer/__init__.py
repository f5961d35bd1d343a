"""callmon trainer."""
