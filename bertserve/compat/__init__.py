"""Other servers' wire formats, so that the clients people already have work unchanged: Text
Embeddings Inference (`tei`) and the Hugging Face Inference API task shapes (`hf`). Only schemas and
shape conversions live here; each task module declares the routes that use them."""
