"""Training LoRAs on the host's loaded model: data, network, optimizer and the training loop."""
