"""Pure tensor functions for the alignment math. Imports only torch."""
