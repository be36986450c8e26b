"""What the experiments share: the scaffold every one stands on (`scaffold`), and the pieces of
training and measuring that more than one study uses. An experiment never imports another."""
