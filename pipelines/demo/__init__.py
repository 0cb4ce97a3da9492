"""Demo: generate the three source systems with Faker and run the nightly job end to end."""
