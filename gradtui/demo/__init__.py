"""The guided tour: catalog and launcher (torch-free), scenarios and worker (torch)."""
