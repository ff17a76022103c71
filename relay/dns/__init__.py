"""DNS: the record sets customers publish, and live verification of them."""
