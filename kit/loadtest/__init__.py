"""Surge rehearsal: Moodle's own load-test journey on locust, with an SLO gate."""
