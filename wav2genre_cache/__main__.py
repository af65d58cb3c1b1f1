from wav2genre_cache.cli import main

main()
