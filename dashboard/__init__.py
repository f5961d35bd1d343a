"""callmon dashboard."""
