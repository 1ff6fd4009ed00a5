package model

// Exports for the model_test package, whose tests use internal/batchtest
// (which imports this package).
var (
	HFFixtures      = hfFixtures
	LoadTestModel   = loadTestModel
	LoadTestModelOn = loadTestModelOn
	RelErr          = relErr
	Argmax          = argmax
)
