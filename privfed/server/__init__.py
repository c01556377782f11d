"""The server side: the round driver, its typed events and callbacks, and the server update rules."""
