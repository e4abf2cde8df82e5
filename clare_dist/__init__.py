"""clare-dist: the CLARE-XR method (label embedding → 2-D regression → rules → similar cases).

This package holds the method and its I/O and imports without Ray; `jobs/` and `serve/`
put it onto Ray.
"""

__version__ = "0.1.0"
