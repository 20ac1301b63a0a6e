"""The only part of RIVAL that talks to the AUTOMATIC1111 WebUI (imports its ``modules``)."""
