"""One clip through the models: decoding, speech detection, quality, language, embedding."""
