"""The runs area of `alignkit serve`."""
