"""The commands (`tlcli train|eval|predict|export`): thin; they call the rest, nothing imports them."""
