# nsp_explore: the two commands of the README are `make tour` and `make test`.
.PHONY: tour test docs lab venv export clean-nbs bench wheel readme clean help
PYTHON ?= python3
V := .venv/bin

help:
	@echo "make tour   - set up .venv, load the pretrained nano pair, sample + score, write reports/tour.html"
	@echo "make test   - set up .venv, check notebooks/library sync, run notebook tests and pytest"
	@echo "make docs   - execute every notebook (CPU) and write the offline book _book/index.html"
	@echo "make lab    - open JupyterLab on nbs/ (installs the lab extras)"
	@echo "make export - nbdev_export + nbdev_clean + README (after editing notebooks)"
	@echo "make bench  - run the CPU benchmarks (JSON under benchmarks/results/)"
	@echo "make compare - train + score next-scale, masked and flat AR on the same shapes (benchmarks/results/compare_cpu.json)"
	@echo "make wheel  - build dist/*.whl"

tour:
	PYTHON=$(PYTHON) scripts/tour.sh

test:
	PYTHON=$(PYTHON) scripts/test.sh

docs:
	PYTHON=$(PYTHON) scripts/setup_env.sh fast,dev,render,mesh
	$(V)/python tools/build_book.py

venv:
	PYTHON=$(PYTHON) scripts/setup_env.sh fast,dev,render,mesh

lab:
	PYTHON=$(PYTHON) scripts/setup_env.sh fast,dev,lab,render,live
	$(V)/jupyter lab nbs/

export:
	$(V)/nbdev_export && $(V)/nbdev_clean && $(V)/python tools/make_readme.py

bench: venv
	$(V)/python benchmarks/run_all.py

wheel: venv
	$(V)/python -m pip wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info _proc _docs _book

.PHONY: compare
compare: venv
	OMP_NUM_THREADS=1 $(V)/python benchmarks/bench_compare.py
