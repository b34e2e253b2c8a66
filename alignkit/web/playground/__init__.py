"""The playground area of `alignkit serve`."""
