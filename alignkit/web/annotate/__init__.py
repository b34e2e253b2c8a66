"""The annotate area of `alignkit serve`."""
