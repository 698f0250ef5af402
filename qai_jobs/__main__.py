from qai_jobs.cli.main import main

main()
