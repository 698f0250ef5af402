from qai_jobs.cli import main

main()
