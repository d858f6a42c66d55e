"""Untrained generators: the DIP hourglass (OES default), ConvDecoder, deep decoder."""
