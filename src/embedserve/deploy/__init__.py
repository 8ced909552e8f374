"""Running embedserve on a distributed engine (issue 17): ray_serve.py for online traffic."""
