"""The client side: a client as plain data, the runtime that trains any client on the one model, its budget check."""
